"""omnid.clients"""
