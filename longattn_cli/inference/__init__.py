"""What a trained model does after training: evaluate it on labelled data, predict labels for new data, and
embed documents as vectors (with the sentence-transformers files that reproduce them)."""
