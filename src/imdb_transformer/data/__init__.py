"""The LightningDataModules: packed blocks for pretraining (:class:`LMDataModule`), labelled reviews
(:class:`ReviewsDataModule`) and contrastive crops (:class:`ContrastiveDataModule`). Loading and
tokenising text lives in :mod:`imdb_transformer.text`."""

from imdb_transformer.data.crops import ContrastiveDataModule
from imdb_transformer.data.lm import LMDataModule
from imdb_transformer.data.reviews import ReviewsDataModule

__all__ = ["ContrastiveDataModule", "LMDataModule", "ReviewsDataModule"]
