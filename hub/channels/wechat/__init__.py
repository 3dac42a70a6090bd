"""WeChat: the Official Account (公众号) and WeCom (企业微信) channels, on one shared core."""

from hub.channels.wechat.official import WechatChannel
from hub.channels.wechat.wecom import WecomChannel

__all__ = ["WechatChannel", "WecomChannel"]
