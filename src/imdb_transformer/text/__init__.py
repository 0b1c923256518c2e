"""Text: loading IMDB and other texts, cleaning, the SentencePiece tokenizer, and arranging token ids
for a backbone. No Lightning and no model here."""
