"""The parts of :class:`bayesian_layers.layers.BayesianLayer`, one job per file (private:
no stability promise; the public names are re-exported by :mod:`..base`).

- :mod:`.seam`: :class:`ParameterSpec` and the parameter seam (specs, posteriors,
  ``kl_terms``, ``set_initializer``) other modules use instead of private tables;
- :mod:`.noise`: ``noise(...)`` and noise hooks, where every draw's noise is made;
- :mod:`.overrides`: the per-thread sampling-mode and K overrides of the contexts;
- :mod:`.state`: all-or-nothing ``load_state_dict`` per layer;
- :mod:`.input`: ``check_input``, ``as_tensor``, ``parameter_dtype``.
"""
