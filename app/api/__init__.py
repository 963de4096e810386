"""The API surfaces, one module each (protocol, translation, router), after vLLM's entrypoints.

- :mod:`app.api.solve`: ``POST /solve`` and ``/sessions`` — the RISE API proper;
- :mod:`app.api.openai`: ``/v1/chat/completions`` and ``/v1/models`` — OpenAI-compatible;
- :mod:`app.api.ops`: ``/health``, ``/ready``, ``/metrics``;
- :mod:`app.api.ui`: ``/ui``, the playground page (``app/ui/index.html``);
- what they share, by job: :mod:`app.api.protocol` (the wire types: request field types, turn,
  vote, usage and error models, a conversation as an episode) and :mod:`app.api.responding` (a
  job run into JSON or SSE, cancelled on disconnect, with the session-affinity headers); errors
  are named in the request's terms by :func:`app.errors.named_errors`.

Each surface translates its request into a :class:`~rise.plan.RequestPlan` and episodes, hands
them to :class:`~app.service.SolveService`, and translates the result back.
"""
