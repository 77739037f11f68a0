"""Image and text towers (CLIP, later DINO), their weights formats, tokenizer and registry."""
