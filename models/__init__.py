"""omnid.models"""
