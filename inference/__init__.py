"""The shared inference core: model spec, pre-processing, engines, decoders, batching, drawing.

Imported by every server and tool; imports none of them (and no web framework, no prometheus).
"""
