"""The text side: tokenizer, prompt templates, class-list parsing and the cached text bank."""
