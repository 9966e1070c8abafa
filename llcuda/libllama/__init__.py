"""llama.cpp's C library in this process: ctypes bindings, its log, the engine and its decode loop.

- :mod:`llcuda.libllama.bindings`: the ctypes structures and function declarations of libllama.
- :mod:`llcuda.libllama.engine`: :class:`~llcuda.libllama.engine.InProcessEngine`, loading and requests.
- :mod:`llcuda.libllama.batcher`: the decode loop (one worker thread, continuous batching).
- :mod:`llcuda.libllama.request`: one request's sampling, stop strings and streamed text.
- :mod:`llcuda.libllama.chat_template`: chat messages to a prompt in the model's template.
"""
