"""rolora.evals"""
