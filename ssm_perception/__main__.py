"""`python -m ssm_perception ...` is the `ssm-perception` command line."""

from ssm_perception.cli import main

if __name__ == "__main__":
    main()
