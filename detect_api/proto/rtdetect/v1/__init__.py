"""Generated from rtdetect/v1/detect.proto: do not edit (scripts/generate_proto.py)."""
