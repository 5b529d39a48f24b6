"""The Chat tab's parts: shared helpers and controls (``common``), the chat column (``column``), Compare (``compare``).

``demo.chat_tab.build_chat_tab`` assembles them.
"""
