"""libllama in this process: ctypes bindings, the engine, its batcher and request state, chat templates."""
