"""omnid.proto"""
