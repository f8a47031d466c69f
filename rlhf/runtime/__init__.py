"""What every stage shares at run time, whatever it trains: the process group and its
collectives, generation from a causal LM, masks from lengths, and one-line error messages."""
