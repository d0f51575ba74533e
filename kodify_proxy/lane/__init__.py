"""The autocompletion lane: /v1/completions and Tabby completions served by us, straight to vLLM."""
