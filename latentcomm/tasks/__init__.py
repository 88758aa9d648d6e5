"""Task data the project makes or reads from installed packages: the fact relay (``facts``) and GSM8K (``gsm8k``)."""
