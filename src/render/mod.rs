//! Handlebars rendering of WhatsApp text, with the helpers a Colombian clinic needs.
