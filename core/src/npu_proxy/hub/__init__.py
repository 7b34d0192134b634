"""Getting models from a Hugging Face hub: name resolution and verified downloads.

The hub knows no model format: the registered formats (``npu_proxy.engine.formats``)
say which files a repository's model needs, describe what arrived and prepare it.
"""
