# mmsape's runtime choices, in one place for every config. A config lists this
# file next to its toolbox's base. MMEngine refuses a key that two bases define,
# so the entries the toolbox bases define too (default_hooks, optim_wrapper) are
# given here by name and set by the config:
#     default_hooks = dict(checkpoint=_base_.atomic_checkpoint_hook)
#     optim_wrapper = dict(constructor=_base_.declared_decay_constructor)

# mmsape's backbones, position encodings, necks and detectors (mmsape.models),
# and its hooks, optimizer constructors and safe checkpoint I/O (mmsape.engine),
# whatever tool reads the config (mmsape's, mmdet's or mmseg's, a bare Runner).
custom_imports = dict(imports=['mmsape.models', 'mmsape.engine'], allow_failed_imports=False)

# Checkpoints and the last_checkpoint pointer written atomically, whatever tool
# runs the config.
atomic_checkpoint_hook = dict(type='mmsape.AtomicCheckpointHook')

# No weight decay on the parameters the model declares in no_weight_decay()
# (position tables, PEG convolutions, RoPE frequencies, class token), as each
# paper trains its own: the constructor reads them, so configs carry no
# custom_keys for them.
declared_decay_constructor = 'mmsape.DeclaredDecayOptimWrapperConstructor'

# Progress bars, and torch's RNG state in checkpoints so that a resumed run
# repeats an uninterrupted one exactly (the demos' custom_hooks).
progress_and_rng_hooks = [
    dict(type='mmsape.ProgressBarHook'),
    dict(type='mmsape.TorchRNGStateHook'),
]
