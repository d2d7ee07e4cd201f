"""The folder to give fairseq as --user-dir, from wherever the package is installed:

    fairseq-train ... --user-dir "$(python -m ofa_prompt.user_dir)"
"""
import os

PATH = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    print(PATH)
