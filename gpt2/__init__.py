"""GPT-2 on ggml through tinynn."""
