"""``npu-proxy bench``: one command that measures this machine's devices and any
OpenAI-compatible server with the same prompts, llama-bench style.

- :mod:`.measure`: what one request measured (:class:`~.measure.Sample`) and the
  median/min/max of several (:class:`~.measure.Stat`);
- :mod:`.prompts`: prompts of an exact token count, the agent conversation, texts to
  embed;
- :mod:`.targets`: what is measured: a device through the server's own backend
  classes, or a server by URL;
- :mod:`.records`: the results and how they print (table, Markdown, JSON);
- :mod:`.machine`: the facts that change results (CPU, OpenVINO, devices, battery);
- :mod:`.runner`: the workloads over the targets, with the guards;
- :mod:`.cli`: the click command the OpenVINO plugin registers.
"""
