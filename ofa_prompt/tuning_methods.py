"""The names of the tuning methods (--tuning-method), in one place for the model's options (models/config.py,
models/tuning.py) and the YAML configurations' `tuning` key (yaml_config.py, which writes command lines without
importing torch or fairseq, so it cannot take them from the model's modules)."""
TUNING_METHODS = ("auto", "prompt", "adapter", "bitfit", "finetune")
