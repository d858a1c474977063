"""Train one of pyneuro's MNIST models, as the original tutorial did: pick it from a menu.

    python main.py                      # asks which model, then trains with config.json
    python main.py --model lstm         # no question asked
    python main.py --model cnn --epochs 2 --set train.lr=0.003   # any `pyneuro train` option
"""
from __future__ import annotations

import sys
from pathlib import Path


def ask_model(names, descriptions, read=input, write=print) -> str:
    """Numbered menu; re-asks until the answer is a listed number or name."""
    write("Which model do you want to train?")
    for i, (name, desc) in enumerate(zip(names, descriptions), 1):
        write(f"  {i:>2}. {name:<12} {desc}")
    while True:
        try:
            answer = read(f"Enter a number (1-{len(names)}) or a name: ").strip()
        except EOFError:
            raise SystemExit("no model chosen (end of input)") from None
        if answer.isdigit() and 1 <= int(answer) <= len(names):
            return names[int(answer) - 1]
        if answer in names:
            return answer
        write(f"'{answer}' is not on the list; choose 1-{len(names)}.")


def main(argv=None) -> int:
    from pyneuro import cli
    from pyneuro.models import registry

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--model" not in argv and not any(a.startswith("--model=") for a in argv) and "--resume" not in argv:
        names = registry.names()
        model = ask_model(names, [registry.get(n).description for n in names])
        argv = ["--model", model, *argv]
    resuming = "--resume" in argv
    if not resuming and "--config" not in argv and (Path(__file__).parent / "config.json").exists():
        argv = ["--config", str(Path(__file__).parent / "config.json"), *argv]
    return cli.main(["train", *argv])


if __name__ == "__main__":
    raise SystemExit(main())
