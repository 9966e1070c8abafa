"""The machine: llama.cpp's binaries (bootstrap), GPUs, placement over devices, memory fit."""
