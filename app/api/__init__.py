"""The API surfaces, one module each (protocol, translation, router), after vLLM's entrypoints.

- :mod:`app.api.solve`: ``POST /solve`` and ``/sessions`` — the RISE API proper;
- :mod:`app.api.openai`: ``/v1/chat/completions`` and ``/v1/models`` — OpenAI-compatible;
- :mod:`app.api.ops`: ``/health``, ``/ready``, ``/metrics``;
- :mod:`app.api.ui`: ``/ui``, the playground page (``app/ui/index.html``);
- :mod:`app.api.common`: what they share (turn/vote wire models, errors, SSE and JSON responses).

Each surface translates its request into a :class:`~rise.plan.RequestPlan` and episodes, hands
them to :class:`~app.service.SolveService`, and translates the result back.
"""
