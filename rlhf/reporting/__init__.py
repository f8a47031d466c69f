"""Reading results back: PNG plots of logged metrics and W&B runs from their local files."""
