"""Helpers the tests share: writing sources (videos, rasters, image folders), driving `segbatch run` in a process, reading stores, tiny models."""
