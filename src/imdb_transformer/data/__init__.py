"""IMDB loading, the SentencePiece tokenizer and the LightningDataModules."""

from imdb_transformer.data.crops import ContrastiveDataModule
from imdb_transformer.data.imdb import IMDBSourceError, clean_text, load_split
from imdb_transformer.data.lm import LMDataModule
from imdb_transformer.data.reviews import ReviewsDataModule
from imdb_transformer.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "ContrastiveDataModule",
    "IMDBSourceError",
    "LMDataModule",
    "ReviewsDataModule",
    "Tokenizer",
    "clean_text",
    "load_split",
]
