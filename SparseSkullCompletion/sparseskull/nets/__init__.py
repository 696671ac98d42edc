"""The networks: the paper's sparse completion network, its dense counterpart, model files and the
catalogue of shipped and registered models."""
