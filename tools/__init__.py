"""Operator tools that no server imports: benchmarks (bench, grpc_bench), the load harness (load, scale_run),
reliability proofs (peer churn, soak), the synthetic WebRTC client, the server and Triton launchers."""
