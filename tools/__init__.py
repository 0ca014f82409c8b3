"""Operator tools that no server imports: reliability proofs (peer churn, soak)."""
