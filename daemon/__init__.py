"""omnid.daemon"""
