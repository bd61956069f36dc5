"""rolora.agents"""
