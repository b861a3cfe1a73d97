"""Serving: the logged image classifier (pyfunc), its preprocessing and a REST client; reads images, writes predictions; serve.common is the bottom module every package imports."""
