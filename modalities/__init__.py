"""omnid.modalities"""
