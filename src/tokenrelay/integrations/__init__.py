"""Optional bridges to other frameworks. Nothing here is imported by tokenrelay itself.

* `tokenrelay.integrations.langchain` - LangChain and LangGraph (`pip install "tokenrelay[langchain]"`):
  chat models as backends, LangGraph agents and Runnables served through tokenrelay's sinks, and a
  per-request callback handler for code written in the classic `callbacks=[handler]` style.
"""
