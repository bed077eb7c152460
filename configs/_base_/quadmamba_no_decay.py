# The weight-decay rule of every QuadMamba config: none on norms, biases and other 1-D
# parameters (Ds among them), nor on the 2-D state-space A_logs. Used as
# optim_wrapper.paramwise_cfg={{_base_.quadmamba_paramwise_cfg}}.
quadmamba_paramwise_cfg = dict(
    norm_decay_mult=0.,
    bias_decay_mult=0.,
    flat_decay_mult=0.,
    custom_keys={
        '.A_logs': dict(decay_mult=0.),
        '.Ds': dict(decay_mult=0.)
    })
