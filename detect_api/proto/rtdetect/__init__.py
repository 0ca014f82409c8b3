"""The proto package rtdetect (see v1/detect.proto)."""
