"""What runs in or beside the GPU pods: vLLM launcher, NVML exporter, profiler, simulator, fleet runner."""

__version__ = "0.1.0"
