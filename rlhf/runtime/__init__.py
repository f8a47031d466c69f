"""What every stage shares at run time, whatever it trains: the process group and its
collectives, generation from a causal LM, masks from lengths, one-line error messages, and
the host heap's reuse of freed memory."""
