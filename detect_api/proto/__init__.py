"""The gRPC interface: detect.proto and the Python code generated from it (scripts/generate_proto.py)."""

from detect_api.proto.rtdetect.v1 import detect_pb2, detect_pb2_grpc

__all__ = ["detect_pb2", "detect_pb2_grpc"]
