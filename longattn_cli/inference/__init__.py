"""What a trained model does after training: evaluate on new data (and, to come, predict, embed, export)."""
