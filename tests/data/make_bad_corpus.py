"""Writes the malformed-input corpus in tests/data/bad/ (committed; rerun to regenerate).

python tests/data/make_bad_corpus.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent / "bad"

GOOD_ROWS = "\n".join(f"sentence number {i} is {'great' if i % 2 else 'awful'},{i % 2}" for i in range(12))


def write(name: str, content: str | bytes) -> None:
    path = HERE / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    write("not_utf8.csv", b"text,label\ncaf\xe9 au lait,1\nfine,0\n")
    write("truncated_utf8.csv", b"text,label\nok,1\nfine,0\nna\xc3")  # ends inside a 2-byte character
    write("empty.csv", b"")
    write("header_only.csv", "text,label\n")
    write("blank_first_line.csv", "\ntext,label\ngood,1\n")
    write("missing_column.csv", "text,labels\ngood,1\nbad,0\n")
    write("duplicate_header.csv", "text,label,label\ngood,1,1\nbad,0,0\n")
    write("ragged_rows.csv", f"text,label\n{GOOD_ROWS}\ntoo,many,fields\n")
    write("unclosed_quote.csv", 'text,label\ngood,1\n"this quote never ends,0\nbad,0\n')
    write("unclosed_quote_first_row.csv", 'text,label\n"this quote never ends,1\n')
    write(
        "broken_line.jsonl",
        '{"text": "good", "label": 1}\n{"text": "oops", "label": \n'
        + "".join(
            json.dumps({"text": f"row {i} is {'great' if i % 2 else 'awful'}", "label": i % 2}) + "\n"
            for i in range(10)
        ),
    )
    write("not_an_object.jsonl", '{"text": "good", "label": 1}\n[1, 2]\n{"text": "bad", "label": 0}\n')
    write("blank_lines_only.jsonl", "\n\n   \n")
    write("missing_key.jsonl", '{"text": "good", "sentiment": 1}\n{"text": "bad", "sentiment": 0}\n')
    write(
        "null_labels.jsonl",
        '{"text": "good", "label": 1}\n{"text": "bad", "label": null}\n{"text": "fine", "label": 0}\n',
    )
    write("null_labels.csv", f"text,label\n{GOOD_ROWS}\nno label here,\n")
    write("empty_text.csv", f"text,label\n{GOOD_ROWS}\n   ,1\n")
    write("labels_outside_set.csv", f"text,label\n{GOOD_ROWS}\nwho knows,7\n")
    write("mixed_label_types.csv", "text,label\ngood,1\nbad,negative\nfine,0\nok,positive\n")
    write("one_class.csv", "text,label\n" + "\n".join(f"good {i},pos" for i in range(10)) + "\n")
    write("conflicting_duplicates.csv", f"text,label\n{GOOD_ROWS}\nsentence number 1 is great,0\n")
    write("all_labels_empty.csv", "text,label\ngood,\nbad,\n")
    write("huge_record.csv", f"text,label\n{GOOD_ROWS}\n{'word ' * 210_000},1\n")
    write("bad_syntax.json", '[{"text": "good", "label": 1},\n {"text": "bad" "label": 0}]')
    write("not_an_array.json", '{"text": "good", "label": 1}')
    write("empty_array.json", "[]")
    write("corrupt.parquet", b"PAR1 this is not really parquet PAR1")
    write("unknown_format.xlsx", b"PK\x03\x04 not a dataset")
    write(
        "rare_class.csv",
        "text,label\n" + "\n".join(f"row {i},{'a' if i < 12 else 'b'}" for i in range(14)) + "\n",
    )
    write("duplicates.csv", f"text,label\n{GOOD_ROWS}\nsentence number 0 is awful,0\n")
    write("bom.csv", "\ufefftext,label\n" + GOOD_ROWS + "\n")
    import pandas as pd

    pd.DataFrame({"text": ["good", "bad"], "stars": [5, 1]}).to_parquet(HERE / "missing_column.parquet")


if __name__ == "__main__":
    main()
