"""rolora.adapters"""
