"""Child processes llcuda starts and talks to.

- :mod:`llcuda.processes.process`: :class:`~llcuda.processes.process.ManagedProcess`, the one lifecycle
  (argument list, log file, parent-death signal, port retry, readiness deadline, stop).
- :mod:`llcuda.processes.llama_server`: llama.cpp's ``llama-server``.
- :mod:`llcuda.processes.rpc_worker`: llama.cpp's ``rpc-server`` (GPUs of other hosts).
- :mod:`llcuda.processes.client`: the HTTP client of an OpenAI-compatible server.
"""
