"""OFA's dictionary: the BPE dictionary, then `<mask>`, the image codes and the location bins."""
import os

from fairseq.data import Dictionary


def build_ofa_dictionary(dict_path: str, code_dict_size: int = 8192, num_bins: int = 1000) -> Dictionary:
    if not os.path.isfile(dict_path):
        raise FileNotFoundError(f"dictionary file not found: {dict_path} (expected OFA's dict.txt in --bpe-dir)")
    d = Dictionary.load(dict_path)
    d.add_symbol("<mask>")
    for i in range(code_dict_size):
        d.add_symbol(f"<code_{i}>")
    for i in range(num_bins):
        d.add_symbol(f"<bin_{i}>")
    return d
