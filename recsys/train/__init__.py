"""Grouped ensemble training, one module per stage of a run.

=============  ==============================================================================
``cli``        the command line (parser, ``main``); ``recsys/train_group.py`` launches it
``job``        one rank's job: run dirs, its groups one after another, merge, report
``run_dir``    preflight, the previous run set aside / restored on resume / released
``schedule``   which groups a rank trains (parallel or sequential), merging across groups
``build``      a group's DMP model, optimizer, loader, checkpointer and train pipeline
``loop``       the step loop (segments, resume, counters, clock)
``callbacks``  loss log + throughput, checkpoints, validation + early stopping
=============  ==============================================================================

Example::

    from recsys.train.cli import main
    main(["--config", "configs/demo.toml", "--set", "train.epochs=1"])
"""
