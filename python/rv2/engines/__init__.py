"""Compiled engines: target profiles (`profile`), and the builds and runtimes that
implement the generation stage ports and the Predictor backend."""
