"""The clinical path, CT to implant: skull mask, model grid, network, CT grid, cleaning, spanning, mesh,
and the pipeline that runs these stages and writes the outputs. Never imports training, evaluation or synth."""
